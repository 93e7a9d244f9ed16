package streamloop

import (
	"bytes"
	"testing"
)

func TestWholeLen(t *testing.T) {
	cases := []struct {
		unit Unit
		in   string
		want int
	}{
		{AnyBytes, "abc", 3},
		{Lines, "", 0},
		{Lines, "{\"a\":1}\n", 8},
		{Lines, "{\"a\":1}\n{\"b\"", 8},
		{Lines, "{\"a\":", 0},
		{Lines, "a\nb\nc", 4},
		{Events, "data: a\n\n", 9},
		{Events, "data: a\n", 0},
		{Events, "data: a\n\ndata: b\n", 9},
		{Events, "event: x\ndata: a\n\nevent: y\n", 18},
		{Events, "data: a\r\n\r\n", 11},
		{Events, "data: a\r\n\r", 10},
		{Events, "data: a\r\n", 0},
		{Events, "data: a\r\rdata: b", 9},
		{Events, "data: a\r\n\ndata", 10},
		{Events, "\n", 1},
		{Events, "\ndata: a\n", 1},
		{Events, "data: a\rb\n", 0},
	}
	for _, c := range cases {
		if got := c.unit.WholeLen([]byte(c.in)); got != c.want {
			t.Errorf("unit %d: WholeLen(%q) = %d, want %d", c.unit, c.in, got, c.want)
		}
	}
}

// eventEnds returns the end of the last SSE event in b, read forward by
// the HTML Living Standard's line rules, with a CR at the end of b taken
// as a line end.
func eventEnds(b []byte) int {
	last := 0
	for start := 0; start < len(b); {
		i := bytes.IndexAny(b[start:], "\r\n")
		if i < 0 {
			break
		}
		end := start + i + 1
		if b[start+i] == '\r' && end < len(b) && b[end] == '\n' {
			end++
		}
		if i == 0 {
			last = end // a blank line
		}
		start = end
	}
	return last
}

// FuzzWholeLen checks the backward search of WholeLen against a forward
// reading of lines.
func FuzzWholeLen(f *testing.F) {
	f.Add([]byte("data: a\n\ndata: b\n"))
	f.Add([]byte("event: x\r\ndata: y\r\n\r\nda"))
	f.Add([]byte("a\r\r\n\rb\n\r"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Events.WholeLen(b), eventEnds(b); got != want {
			t.Errorf("Events.WholeLen(%q) = %d, want %d", b, got, want)
		}
		if got, want := Lines.WholeLen(b), bytes.LastIndexByte(b, '\n')+1; got != want {
			t.Errorf("Lines.WholeLen(%q) = %d, want %d", b, got, want)
		}
	})
}
