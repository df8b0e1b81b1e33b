//! Merkle trees over SHA-256 with inclusion proofs.
//!
//! - A leaf is `SHA-256(0x00 ‖ bytes)`, an inner node `SHA-256(0x01 ‖ left ‖ right)`: the prefixes
//!   keep an inner node from ever being presented as a leaf.
//! - Leaves are paired left to right, level by level. **Odd counts:** when a level has an odd
//!   number of nodes, the last one has no sibling and is promoted unchanged to the next level.
//!   It is not paired with a copy of itself (as Bitcoin does), because duplication gives
//!   `[a, b, c]` and `[a, b, c, c]` the same root (CVE-2012-2459). Promotion yields the same
//!   trees as RFC 6962's split at the largest power of two.
//! - The root of no leaves is `SHA-256("")`, as in RFC 6962; batches are never empty, and a block
//!   without transactions uses it.
//! - A proof carries the leaf's index, the number of leaves and the siblings from the leaf up.
//!   The count says at which levels the path's node is a promoted last node (no sibling is
//!   consumed there), and it is checked against the count that the batch or header commits to.

use sha2::{Digest as _, Sha256};

use crate::codec::{limits, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::hash::{tag, tagged, Hash256};

/// The hash of a leaf holding `bytes`.
pub fn leaf_hash(bytes: &[u8]) -> Hash256 {
    tagged(tag::MERKLE_LEAF, &[bytes])
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash256, right: &Hash256) -> Hash256 {
    tagged(tag::MERKLE_NODE, &[&left.0, &right.0])
}

/// The root of a tree with no leaves.
pub fn empty_root() -> Hash256 {
    Hash256(Sha256::digest([]).into())
}

/// The root over `leaves` (leaf hashes, in order).
pub fn root(leaves: &[Hash256]) -> Hash256 {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

fn next_level(level: &[Hash256]) -> Vec<Hash256> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => node_hash(left, right),
            [lone] => *lone,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// The inclusion proof of leaf `index` among `leaves`, or `None` if there is no such leaf.
pub fn prove(leaves: &[Hash256], index: usize) -> Option<MerkleProof> {
    if index >= leaves.len() {
        return None;
    }
    let count = u32::try_from(leaves.len()).ok()?;
    let mut siblings = Vec::new();
    let mut level = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sibling = i ^ 1;
        if sibling < level.len() {
            siblings.push(level[sibling]);
        }
        level = next_level(&level);
        i /= 2;
    }
    Some(MerkleProof {
        index: u32::try_from(index).ok()?,
        count,
        siblings,
    })
}

/// The path from one leaf to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleProof {
    /// The leaf's position.
    pub index: u32,
    /// How many leaves the tree has.
    pub count: u32,
    /// Sibling hashes from the leaf's level upwards; promoted levels have none.
    pub siblings: Vec<Hash256>,
}

impl MerkleProof {
    /// The root that `leaf` at this proof's position leads to; an error if the proof's shape
    /// does not fit its count (too few or too many siblings, index out of range).
    pub fn root_from(&self, leaf: &Hash256) -> Result<Hash256> {
        if self.index >= self.count {
            return Err(Error::BadProof);
        }
        let mut siblings = self.siblings.iter();
        let mut acc = *leaf;
        let mut index = self.index;
        let mut width = self.count;
        while width > 1 {
            if index % 2 == 1 {
                acc = node_hash(siblings.next().ok_or(Error::BadProof)?, &acc);
            } else if index + 1 < width {
                acc = node_hash(&acc, siblings.next().ok_or(Error::BadProof)?);
            }
            // else: the last node of an odd level, promoted without a sibling.
            index /= 2;
            width = width.div_ceil(2);
        }
        if siblings.next().is_some() {
            return Err(Error::BadProof);
        }
        Ok(acc)
    }

    /// Whether `leaf` at this proof's position leads to `root`.
    pub fn verifies(&self, leaf: &Hash256, root: &Hash256) -> bool {
        self.root_from(leaf).is_ok_and(|r| r == *root)
    }
}

impl Wire for MerkleProof {
    const MIN_LEN: usize = 12;

    fn write(&self, w: &mut Writer) {
        w.u32(self.index);
        w.u32(self.count);
        w.len(self.siblings.len());
        for s in &self.siblings {
            w.raw(&s.0);
        }
    }

    fn read(r: &mut Reader<'_>) -> std::result::Result<Self, DecodeError> {
        let index = r.u32("proof index")?;
        let count = r.u32("proof count")?;
        let n = r.count("proof siblings", limits::MAX_PROOF_DEPTH, 32)?;
        let siblings = (0..n)
            .map(|_| r.array("proof sibling").map(Hash256))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self {
            index,
            count,
            siblings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected values below are built step by step with `sha2` directly, following the
    /// rules in the module doc, not with the functions under test.
    fn sha(parts: &[&[u8]]) -> Hash256 {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Hash256(h.finalize().into())
    }

    fn leaf(data: &[u8]) -> Hash256 {
        sha(&[&[0x00], data])
    }

    fn node(l: &Hash256, r: &Hash256) -> Hash256 {
        sha(&[&[0x01], &l.0, &r.0])
    }

    fn leaves(n: usize) -> Vec<Hash256> {
        (0..n).map(|i| leaf_hash(&[b'a' + i as u8])).collect()
    }

    #[test]
    fn leaf_and_node_hashes_match_hand_computed_values() {
        // `printf '\x00a' | sha256sum` and `printf '\x00b' | sha256sum`.
        assert_eq!(
            leaf_hash(b"a").to_hex(),
            "022a6979e6dab7aa5ae4c3e5e45f7e977112a7e63593820dbec1ec738a24f93c"
        );
        assert_eq!(
            leaf_hash(b"b").to_hex(),
            "57eb35615d47f34ec714cacdf5fd74608a5e8e102724e80b24b287c0c27b6a31"
        );
        assert_eq!(leaf_hash(b"a"), leaf(b"a"));
        assert_eq!(empty_root(), sha(&[]));
    }

    #[test]
    fn one_leaf_root_is_the_leaf() {
        assert_eq!(root(&leaves(1)), leaf(b"a"));
    }

    #[test]
    fn two_leaves() {
        let expected = node(&leaf(b"a"), &leaf(b"b"));
        assert_eq!(root(&leaves(2)), expected);
    }

    #[test]
    fn three_leaves_promote_the_last() {
        let ab = node(&leaf(b"a"), &leaf(b"b"));
        let expected = node(&ab, &leaf(b"c"));
        assert_eq!(root(&leaves(3)), expected);
        // Not the duplicated-last-leaf construction.
        assert_ne!(root(&leaves(3)), node(&ab, &node(&leaf(b"c"), &leaf(b"c"))));
    }

    #[test]
    fn five_leaves() {
        let ab = node(&leaf(b"a"), &leaf(b"b"));
        let cd = node(&leaf(b"c"), &leaf(b"d"));
        let abcd = node(&ab, &cd);
        // Level 1 is [ab, cd, e]: e is promoted, then again at level 2 ([abcd, e]).
        let expected = node(&abcd, &leaf(b"e"));
        assert_eq!(root(&leaves(5)), expected);

        let proof = prove(&leaves(5), 4).unwrap();
        assert_eq!(proof.siblings, vec![abcd]);
        let proof = prove(&leaves(5), 2).unwrap();
        assert_eq!(proof.siblings, vec![leaf(b"d"), ab, leaf(b"e")]);
    }

    #[test]
    fn a_tree_and_its_duplicated_last_leaf_differ() {
        let three = leaves(3);
        let mut four = three.clone();
        four.push(three[2]);
        assert_ne!(root(&three), root(&four));
    }

    #[test]
    fn every_proof_verifies_and_nothing_else_does() {
        for n in 1..=17 {
            let ls = leaves(n);
            let r = root(&ls);
            for i in 0..n {
                let proof = prove(&ls, i).unwrap();
                assert!(proof.verifies(&ls[i], &r), "n={n} i={i}");
                // Another leaf at this position fails.
                assert!(!proof.verifies(&leaf_hash(b"other"), &r));
                // So does another position.
                let mut moved = proof.clone();
                moved.index = ((i + 1) % n) as u32;
                assert!(n == 1 || !moved.verifies(&ls[i], &r), "n={n} i={i}");
                // A tampered or extra sibling fails.
                if let Some(first) = proof.siblings.first() {
                    let mut tampered = proof.clone();
                    tampered.siblings[0] = node(first, first);
                    assert!(!tampered.verifies(&ls[i], &r));
                }
                let mut longer = proof.clone();
                longer.siblings.push(r);
                assert!(longer.root_from(&ls[i]).is_err());
            }
            assert!(prove(&ls, n).is_none());
        }
    }

    #[test]
    fn a_wrong_count_may_still_reach_the_root() {
        // Leaf 0 of 5 and leaf 0 of 6 consume a sibling at every level, so the count alone does
        // not always change the path: this is why proofs are checked against the count that the
        // batch header or block header commits to, not only against the root.
        let ls = leaves(5);
        let mut proof = prove(&ls, 0).unwrap();
        proof.count = 6;
        assert!(proof.verifies(&ls[0], &root(&ls)));
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let proof = MerkleProof {
            index: 3,
            count: 3,
            siblings: vec![],
        };
        assert!(proof.root_from(&leaf(b"a")).is_err());
    }
}
