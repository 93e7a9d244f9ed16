package config

import (
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path is the YAML path of the value, such as nodes[1].url, or empty for
	// the document as a whole.
	Path string
	// Line is the 1-based line of the value in the file, or 0 when the
	// value did not come from the file (a default or an environment
	// variable).
	Line int
	// Env names the environment variable the value came from, if any.
	Env string
	// Message describes what is wrong and, where it helps, the accepted
	// values.
	Message string
}

// String formats p as "line 7: nodes[0].url: message", with the line left
// out when it is 0 and "env NAME" in its place for a value from the
// environment.
func (p Problem) String() string {
	var b strings.Builder
	switch {
	case p.Line > 0:
		fmt.Fprintf(&b, "line %d: ", p.Line)
	case p.Env != "":
		fmt.Fprintf(&b, "env %s: ", p.Env)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Errors is the error returned by Load, Parse, ParseEnv, FromEnv and
// Validate when the configuration has problems. It lists all of them.
type Errors struct {
	// Source names what was read: a file path, or "environment".
	Source string
	// Problems is sorted by line, and problems without a line come last.
	Problems []Problem
}

// Error names the source, then lists the problems one per line, or puts
// a single problem on the same line.
func (e *Errors) Error() string {
	prefix := e.Source
	if prefix == "" {
		prefix = "config"
	}
	if len(e.Problems) == 1 {
		return prefix + ": " + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", prefix, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n")
		b.WriteString(p.String())
	}
	return b.String()
}

// sortProblems orders problems by line, those without a line last, then
// by path and message.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Line != b.Line {
			if a.Line == 0 || b.Line == 0 {
				return b.Line == 0
			}
			return a.Line < b.Line
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.Message < b.Message
	})
}

// suggest returns the candidate closest to word when it is close enough to
// be a likely typo, or "".
func suggest(word string, candidates []string) string {
	word = strings.ToLower(word)
	best, bestDist := "", -1
	for _, c := range candidates {
		d := editDistance(word, c)
		if isAbbreviation(word, c) {
			// "sha" for sha256, "warning" for warn.
			d = 1
		}
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	// Allow about one edit per three characters, and at least two, so
	// that short keys are not matched to unrelated ones.
	limit := max(2, len(word)/3)
	if bestDist < 0 || bestDist > limit {
		return ""
	}
	return best
}

// isAbbreviation reports whether one of a and b, at least three bytes
// long, starts the other.
func isAbbreviation(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	return len(a) >= 3 && strings.HasPrefix(b, a)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// didYouMean returns " (did you mean X?)" for the closest candidate, or "".
func didYouMean(word string, candidates []string) string {
	if s := suggest(word, candidates); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}
