//! Registries (placeholder: the FunctionsRegistry lands here).
