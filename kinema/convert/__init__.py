"""Converters from foreign checkpoint key layouts to kinema's parameter names."""
