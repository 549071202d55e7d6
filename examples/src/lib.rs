//! Examples of zc public APIs; see the `[[example]]` targets.
