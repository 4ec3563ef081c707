"""The coded trajectory and what it is made of: sampler settings and time grid (``schedule``),
the SDE step (``sde``), the seeded codebooks (``codebooks``), the network adapter
(``velocity``) and the one jit-compiled scan shared by encoder and decoder (``trajectory``)."""
