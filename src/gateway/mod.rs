//! The gateway: HTTP faces over the cluster client. (Minimal: the portal alone until the
//! gateway server is merged.)

pub mod portal;
