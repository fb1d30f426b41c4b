//! Stop strings over streamed text: text is released as soon as no stop string can begin in
//! it; a suffix that could be the start of one is held back until the next piece decides.

/// Watches a choice's text for its stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not released (a possible start of a stop string).
    held: String,
    /// Bytes released so far.
    released: usize,
    stopped: bool,
}

impl StopMatcher {
    /// `stops`: non-empty strings.
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops, ..StopMatcher::default() }
    }

    /// Whether a stop string was found (nothing more is released).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Bytes released so far (after a stop: the position where the stop string began).
    pub fn released(&self) -> usize {
        self.released
    }

    /// Bytes received so far (released + held), while not stopped.
    pub fn received(&self) -> usize {
        self.released + self.held.len()
    }

    /// Adds `piece`; returns the text that is now safe to release. When a stop string
    /// appears, the text before it is returned and [`stopped`](Self::stopped) becomes true.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if self.stops.is_empty() {
            return self.release(self.held.len());
        }
        // Earlier text never held a whole stop string (it would have matched), so only
        // matches inside `held` are possible.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.release(pos);
            self.held.clear();
            self.stopped = true;
            return out;
        }
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && self.held.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.release(self.held.len() - keep)
    }

    /// The end of the text: whatever is held is released (unless stopped).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.release(self.held.len())
    }

    fn release(&mut self, n: usize) -> String {
        let out: String = self.held.drain(..n).collect();
        self.released += out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| m.push(p)).collect();
        out.push(m.finish());
        (out, m.stopped())
    }

    #[test]
    fn no_stops_release_everything() {
        assert_eq!(run(&[], &["a", "bc"]), (vec!["a".into(), "bc".into(), "".into()], false));
    }

    #[test]
    fn a_stop_string_across_pieces_is_held_then_cut() {
        let (out, stopped) = run(&["END"], &["hello E", "N", "D and more"]);
        assert_eq!(out, vec!["hello ", "", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn a_false_start_is_released_later() {
        let (out, stopped) = run(&["END"], &["xE", "Ny", "z"]);
        assert_eq!(out, vec!["x", "ENy", "z", ""]);
        assert!(!stopped);
        // Held at the end of the text: released by finish.
        let (out, stopped) = run(&["END"], &["abcEN"]);
        assert_eq!(out, vec!["abc", "EN"]);
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["world", "lo"], &["hello world"]);
        assert_eq!(out, vec!["hel", ""]);
        assert!(stopped);
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(m.push("a\n"), "a");
        assert_eq!(m.push("\nb"), "");
        assert!(m.stopped());
        assert_eq!(m.released(), 1);
    }

    #[test]
    fn multibyte_prefixes_stay_on_char_boundaries() {
        let (out, stopped) = run(&["éé"], &["aé", "b"]);
        assert_eq!(out, vec!["a", "éb", ""]);
        assert!(!stopped);
    }
}
