"""The build pipeline: its stages (install, boot snapshot, provision, final), the
keys that name their outputs, the context a build passes to each stage, and the
loop that runs them (`build`)."""
