"""The codec, in four layers plus the session on top:

- ``format``   the .gvc bytes: bit I/O, the container, rank coding (no JAX);
- ``sampling`` the coded trajectory: schedule, SDE step, codebooks, the compiled scan;
- ``gop``      the one GOP loop: plans, variants, engine, records, rate, resume journal;
- ``payloads`` side payloads of a GOP record: anchor frames, the I2V tail residual;
- ``session``  video <-> stream: sets up a GOP loop for an encode, a batch or a decode.
"""
