"""The Qt views of napari-medsam: the Segment widget, its panels and the crash-recovery glue.

Every view holds the Qt-free :class:`~napari_medsam.segmentation.annotation.AnnotationModel`
(and the napari viewer), never another view: panels report upward through Qt signals, and
every viewer or layer event a view connects is disconnected when it closes.
"""
