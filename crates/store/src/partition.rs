//! Partitions of a service's writes: which partition a key (a token's or an asset's id, a
//! token's symbol) belongs to, and ids made for a partition.
//!
//! A partitioned service keeps one log per partition (with MongoDB, one database each) and
//! every replica applies all of them to one state; each partition's writes are owned by one
//! replica at a time (see `ownership.rs`). Partition 0 is the **registry**: what every other
//! partition reads but none owns (investors, what is known of assets). The hash is FNV-1a,
//! fixed here forever: a key's partition must never change while its log exists.

/// How many partitions the assets and tokens services have with MongoDB. Fixed: changing it
/// would move keys between logs (a migration this product does not do). Twelve spreads evenly
/// over 1, 2, 3, 4 and 6 replicas.
pub const PARTITIONS: usize = 12;

/// The partition of `key` among `partitions` (at least one).
pub fn of(key: &str, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % partitions as u64) as usize
}

/// A new id `{prefix}_{uuid v7}` whose partition is `partition`: time-ordered like any other,
/// found in about `partitions` tries.
pub fn new_id(prefix: &str, partition: usize, partitions: usize) -> String {
    loop {
        let id = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        if of(&id, partitions) == partition {
            return id;
        }
    }
}

/// A read-your-writes position: the partition and the position in its log. Partition 0's is
/// written as the bare number (what an unpartitioned service gives), another's as
/// `{partition}:{position}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: usize,
    pub at: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.partition {
            0 => write!(f, "{}", self.at),
            p => write!(f, "{p}:{}", self.at),
        }
    }
}

impl std::str::FromStr for Position {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (partition, at) = match s.split_once(':') {
            Some((p, at)) => (p.parse().map_err(|_| ())?, at),
            None => (0, s),
        };
        Ok(Position {
            partition,
            at: at.parse().map_err(|_| ())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_partition_and_keys_spread() {
        // Fixed values: the hash must never change under a stored log.
        assert_eq!(of("tok_0190aaaa", 12), of("tok_0190aaaa", 12));
        assert_eq!(of("anything", 1), 0);
        let mut counts = [0usize; PARTITIONS];
        for n in 0..12_000 {
            counts[of(&format!("tok_{n:032x}"), PARTITIONS)] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
        assert_eq!(of("", 12), (0xcbf2_9ce4_8422_2325u64 % 12) as usize);
    }

    #[test]
    fn an_id_made_for_a_partition_belongs_to_it() {
        for partition in 0..PARTITIONS {
            let id = new_id("ast", partition, PARTITIONS);
            assert!(id.starts_with("ast_"));
            assert_eq!(of(&id, PARTITIONS), partition);
        }
    }

    #[test]
    fn positions_read_back_as_written() {
        for position in [
            Position {
                partition: 0,
                at: 17,
            },
            Position {
                partition: 5,
                at: 0,
            },
        ] {
            assert_eq!(position.to_string().parse::<Position>(), Ok(position));
        }
        assert_eq!(
            "17".parse(),
            Ok(Position {
                partition: 0,
                at: 17
            })
        );
        assert!("x:1".parse::<Position>().is_err());
        assert!("1:".parse::<Position>().is_err());
        assert!("".parse::<Position>().is_err());
    }
}
