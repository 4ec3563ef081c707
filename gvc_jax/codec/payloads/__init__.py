"""A GOP record's side payloads: coded anchor frames (``anchors``) and the I2V tail residual
(``residual``)."""
