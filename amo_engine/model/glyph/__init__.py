"""The glyph model: a small StableDiffusion3Pipeline trained here to render one word on a sign."""
