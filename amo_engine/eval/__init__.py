"""OCR evaluation of rendered text: samplers compared on paired images (same word, seed, noise)."""
