//! pixclass-models (filled by later issues).
