"""The Slicer side of CPC-SAM: Qt-free adapters used by the 3D Slicer modules.

* :mod:`.mrml`: export MRML nodes as a training job, load a result into a segmentation node,
  the labeled-pair bookkeeping of the panel.
* :mod:`.process`: the engine's command line in a background process (events, cancel).
* :mod:`.install`: which Python packages are needed in Slicer, version checks, install plan.
* :mod:`.effect_logic`: the Segment Editor effect's geometry, propagation and labelmap write.

The engine (the rest of ``CPCSAMLib``) never imports this package. These modules import no Qt,
CTK or ``slicer.app``; they work with slicer-core's MRML classes outside the application.
"""
