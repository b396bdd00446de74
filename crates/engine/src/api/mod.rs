//! The REST API under `/api`: API tokens and scopes ([`auth`]), JSON problem
//! answers ([`problem`]).
//!
//! Every `/api` route needs a token with the route's scope unless
//! `api.auth = "none"`; `/healthz` and `/readyz` stay public.

pub mod auth;
pub mod dashboard;
pub mod problem;
pub mod sync;
