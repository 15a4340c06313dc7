"""HTML reports with plots: self-contained files (images embedded), readable offline."""
