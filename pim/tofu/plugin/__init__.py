"""A small tfplugin6 provider server: go-plugin handshake, TLS, cty values, schemas."""
