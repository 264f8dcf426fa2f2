"""The shared layer: candidates (``candidates``), the feature snapshot (``store``) and row assembly (``assemble``)."""
