"""Cohorts: ``napari-medsam embed`` and ``segment`` over many scans, locally or on Ray.

* :mod:`.scans` turns a folder, a glob or a CSV into jobs (one per scan) and names scans;
* :mod:`.jobs` is what one scan does (the same core the one-scan commands call);
* :mod:`.records` is the record beside each ``segment`` output that makes runs resumable;
* :mod:`.run` runs the jobs here, one after another, or as one Ray task per scan
  (:mod:`.ray_tasks`, imported only then), and formats progress and the summary;
* :mod:`.command` is what the two CLI commands share (exit codes, Ctrl-C).

No napari, Qt or command-line imports in this package (the options ``--address`` and
``--threads`` are :mod:`napari_medsam.cli._cohort`'s); Ray only with an address. Nothing is
imported here: import from the modules. See ``docs/cli.md``, section "Cohorts".
"""

