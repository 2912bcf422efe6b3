"""``napari-medsam serve``: the encoder as a Ray Serve deployment (optional extra ``server``).

- :mod:`.encoder`: the model a replica runs and how it encodes a batch (no Ray);
- :mod:`.auth`: the API key check;
- :mod:`.app`: the Ray Serve deployment with its HTTP routes (``/v1/models``,
  ``/v1/embed/{model}``, ``/v1/stats``) and :func:`.app.build_app`.

The client is :class:`napari_medsam.engine.remote_model.RemotePromptModel`; it needs none of
this (no Ray on the annotation laptop).
"""
