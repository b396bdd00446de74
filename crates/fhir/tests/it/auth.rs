//! Authentication against token endpoints served by the tests.
