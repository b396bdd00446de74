//! The REST client against mock servers.
