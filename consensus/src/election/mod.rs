//! The improved DPoS's pure rules: the beacon that seeds each election ([`beacon`]), the
//! anonymous, linkable ballots ([`lsag`]), the election and rotation of delegates and their
//! proposer order ([`elect`]), the penalties and incentives an epoch's record brings
//! ([`standing`]), and all of it folded over the finalized chain, block by block
//! ([`schedule`]). Functions over data: no clock, no I/O; the node's runtime feeds them what
//! the finalized chain and governance state hold.

pub mod beacon;
pub mod elect;
pub mod lsag;
pub mod schedule;
pub mod standing;
