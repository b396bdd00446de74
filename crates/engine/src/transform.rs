//! Transform steps: built-in field steps and sandboxed JavaScript.
