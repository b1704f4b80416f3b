//! pixclass-metrics (filled by later issues).
