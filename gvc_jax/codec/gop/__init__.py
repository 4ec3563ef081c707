"""The GOP loop: plans and waves (``plan``), conditioning variants (``variants``,
``conditioning``), the compiled programs of one geometry (``engine``), the one loop for both
directions (``loop``), picks <-> records (``records``), rate targeting (``rate``) and the resume
journal (``journal``)."""
