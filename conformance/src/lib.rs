//! A black-box FHIR R4 conformance, transparency and privacy suite that speaks HTTP only and is
//! run against any endpoint, with and without fhirseal in front.
//!
//! It must never import the code it judges: it depends on no other crate of this workspace.
//! The cases arrive with the conformance issue; until then this crate holds no code.
