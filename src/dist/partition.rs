//! Splitting one global batch over the ranks.

use std::ops::Range;

/// Splits a batch of sentences with `tokens[i]` tokens each into `parts` contiguous
/// ranges whose token sums are as equal as contiguous cuts allow: cut `k` goes where
/// the running sum first reaches `k/parts` of the total. Contiguous, because batches
/// are length-bucketed: neighbouring sentences have similar lengths, so every shard
/// pads as little as the whole batch. Ranges cover `0..tokens.len()` once, in order;
/// a batch with fewer sentences than parts leaves some ranges empty.
pub fn balanced_shards(tokens: &[usize], parts: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "balanced_shards: zero parts");
    let total: usize = tokens.iter().sum();
    let mut cuts = Vec::with_capacity(parts + 1);
    cuts.push(0);
    let mut running = 0usize;
    let mut i = 0;
    for k in 1..parts {
        // Integer arithmetic: the cut points do not depend on float rounding.
        let goal = total * k;
        while i < tokens.len() && running * parts < goal {
            // Take sentence i if that brings the sum closer to the goal than not.
            let with = (running + tokens[i]) * parts;
            if with > goal && with - goal > goal - running * parts {
                break;
            }
            running += tokens[i];
            i += 1;
        }
        cuts.push(i);
    }
    cuts.push(tokens.len());
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(tokens: &[usize], shards: &[Range<usize>]) -> Vec<usize> {
        shards
            .iter()
            .map(|r| tokens[r.clone()].iter().sum())
            .collect()
    }

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for parts in 1..6 {
            for n in 0..20 {
                let tokens: Vec<usize> = (0..n).map(|i| 1 + (i * 7) % 5).collect();
                let shards = balanced_shards(&tokens, parts);
                assert_eq!(shards.len(), parts);
                let flat: Vec<usize> = shards.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "parts {parts} n {n}");
            }
        }
    }

    #[test]
    fn equal_lengths_split_evenly() {
        let tokens = vec![10; 64];
        assert_eq!(sums(&tokens, &balanced_shards(&tokens, 2)), vec![320, 320]);
        assert_eq!(
            sums(&tokens, &balanced_shards(&tokens, 4)),
            vec![160, 160, 160, 160]
        );
        let odd = vec![10; 7];
        assert_eq!(sums(&odd, &balanced_shards(&odd, 2)), vec![40, 30]);
    }

    #[test]
    fn token_counts_not_sentence_counts_are_balanced() {
        // One long sentence and many short ones: the long one gets a shard to itself.
        let mut tokens = vec![60];
        tokens.extend(std::iter::repeat_n(2, 30));
        let shards = balanced_shards(&tokens, 2);
        assert_eq!(shards[0], 0..1);
        assert_eq!(sums(&tokens, &shards), vec![60, 60]);
    }

    #[test]
    fn fewer_sentences_than_parts_leave_empty_shards() {
        let shards = balanced_shards(&[5, 5], 4);
        assert_eq!(shards.iter().filter(|r| !r.is_empty()).count(), 2);
        assert_eq!(shards.iter().map(|r| r.len()).sum::<usize>(), 2);
    }
}
