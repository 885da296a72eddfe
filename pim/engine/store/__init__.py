"""The content-addressed store: published stage objects, their manifests, the
leases running builds hold on them, and listing and garbage collection."""
