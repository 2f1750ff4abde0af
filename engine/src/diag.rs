//! Diagnostics: what is wrong with a recipe, with the span of the offending text.
