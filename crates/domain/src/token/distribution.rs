//! Exact pro-rata split of an amount by the largest remainder method.

use crate::Id;

/// One holder's share of a distribution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    pub investor_id: Id,
    pub balance: crate::Amount,
    pub amount: crate::Amount,
    /// The holder was fully frozen when it was paid: the amount is held back for them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
}

/// Splits `total` over `holdings` (investor, balance > 0) pro rata.
///
/// Each holder first gets `floor(total * balance / sum)`; the `R < holders` units left over go,
/// one each, to the holders with the largest remainders `(total * balance) mod sum`, ties broken
/// by investor id ascending. The parts add up to `total` exactly. The arithmetic is 256-bit wide
/// where needed, so no product overflows.
pub fn split(total: u128, holdings: &[(Id, u128)]) -> Vec<Allocation> {
    let sum: u128 = holdings.iter().map(|(_, b)| *b).sum();
    if sum == 0 {
        return Vec::new();
    }
    let mut parts: Vec<(usize, u128, u128)> = holdings
        .iter()
        .enumerate()
        .map(|(i, (_, b))| {
            let (q, r) = mul_div_rem(total, *b, sum);
            (i, q, r)
        })
        .collect();
    let given: u128 = parts.iter().map(|(_, q, _)| *q).sum();
    let left = usize::try_from(total - given).unwrap_or(usize::MAX);
    let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        parts[b]
            .2
            .cmp(&parts[a].2)
            .then_with(|| holdings[a].0.cmp(&holdings[b].0))
    });
    for &i in by_remainder.iter().take(left) {
        parts[i].1 += 1;
    }
    parts
        .into_iter()
        .map(|(i, q, _)| Allocation {
            investor_id: holdings[i].0.clone(),
            balance: crate::Amount(holdings[i].1),
            amount: crate::Amount(q),
            withheld: false,
        })
        .collect()
}

/// `(a * b) / d` and `(a * b) % d` without overflow, for `b <= d`.
pub fn mul_div_rem(a: u128, b: u128, d: u128) -> (u128, u128) {
    // Split into 64-bit halves and do schoolbook long division on the 256-bit product.
    let (hi, lo) = mul_wide(a, b);
    if hi == 0 {
        return (lo / d, lo % d);
    }
    let mut rem: u128 = 0;
    let mut quot: u128 = 0;
    for bit in (0..256).rev() {
        let word = if bit >= 128 { hi } else { lo };
        let carry = rem >> 127;
        rem = (rem << 1) | ((word >> (bit % 128)) & 1);
        quot <<= 1;
        if carry == 1 || rem >= d {
            rem = rem.wrapping_sub(d);
            quot |= 1;
        }
    }
    (quot, rem)
}

fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    let mask = u64::MAX as u128;
    let (a_hi, a_lo) = (a >> 64, a & mask);
    let (b_hi, b_lo) = (b >> 64, b & mask);
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 64) + (lh & mask) + (hl & mask);
    let lo = (ll & mask) | (mid << 64);
    let hi = hh + (lh >> 64) + (hl >> 64) + (mid >> 64);
    (hi, lo)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(n: usize) -> Vec<Id> {
        (0..n).map(|i| Id::from(format!("inv_{i:03}"))).collect()
    }

    #[test]
    fn hundred_over_three_equal_holders_is_34_33_33() {
        let holders: Vec<_> = ids(3).into_iter().map(|id| (id, 1)).collect();
        let parts: Vec<u128> = split(100, &holders).iter().map(|a| a.amount.0).collect();
        assert_eq!(parts, vec![34, 33, 33]);
    }

    #[test]
    fn remainders_go_to_the_largest_fractions_first() {
        // 10 over 1:2:4 is 1.43, 2.86, 5.71: floors 1, 2, 5 and the unit left goes to 2.86.
        let holders = vec![(Id::from("a"), 1), (Id::from("b"), 2), (Id::from("c"), 4)];
        let parts: Vec<u128> = split(10, &holders).iter().map(|a| a.amount.0).collect();
        assert_eq!(parts, vec![1, 3, 6]);
    }

    #[test]
    fn huge_amounts_do_not_overflow() {
        let holders = vec![
            (Id::from("a"), u128::MAX / 3),
            (Id::from("b"), u128::MAX / 3),
        ];
        let parts = split(u128::MAX, &holders);
        let sum: u128 = parts.iter().map(|a| a.amount.0).sum();
        assert_eq!(sum, u128::MAX);
    }

    #[test]
    fn wide_division_matches_narrow_division() {
        assert_eq!(mul_div_rem(7, 5, 3), (11, 2));
        let (q, r) = mul_div_rem(u128::MAX, u128::MAX - 1, u128::MAX);
        assert_eq!((q, r), (u128::MAX - 1, 0));
    }

    proptest! {
        #[test]
        fn parts_add_up_exactly_and_stay_within_one_unit_of_fair(
            total in 0u128..=u64::MAX as u128 * 1000,
            balances in prop::collection::vec(1u128..=1_000_000_000_000, 1..40),
        ) {
            let holders: Vec<_> = ids(balances.len()).into_iter().zip(balances.iter().copied()).collect();
            let parts = split(total, &holders);
            let sum_b: u128 = balances.iter().sum();
            prop_assert_eq!(parts.iter().map(|a| a.amount.0).sum::<u128>(), total);
            for (a, b) in parts.iter().zip(&balances) {
                let floor = total * b / sum_b;
                prop_assert!(a.amount.0 == floor || a.amount.0 == floor + 1);
            }
        }
    }
}
