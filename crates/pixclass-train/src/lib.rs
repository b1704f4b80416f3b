//! pixclass-train (filled by later issues).
