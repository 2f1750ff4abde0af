//! Events the engine emits while planning and applying; the CLI renders them.
