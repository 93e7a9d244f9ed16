package proxy

import "testing"

func TestCloseOpenEventByTail(t *testing.T) {
	cases := []struct {
		sent        string
		sse, ndjson string // what is appended on SSE and NDJSON streams
	}{
		{"", "", ""},
		{"data: {}\n\n", "", ""},
		{"data: {}\r\n\r\n", "", ""},
		{"\n", "", ""},
		{"data: {}\n", "\n", ""},
		{"data: {}\r\n", "\n", ""},
		{"x\n", "\n", ""},
		{"data: {", "\n\n", "\n"},
		{"data: {}\r", "\n\n", "\n"},
		{"a", "\n\n", "\n"},
	}
	for _, c := range cases {
		// Send in one piece and byte by byte, since markSent keeps a
		// window over all writes. sent skips the time to first byte,
		// which needs a request.
		for _, pieces := range [][]string{{c.sent}, splitBytes(c.sent)} {
			r := &relay{tail: blankTail, sent: true}
			for _, p := range pieces {
				r.markSent([]byte(p))
			}
			if got := string(closeOpenEvent(nil, r.tail, true)); got != c.sse {
				t.Errorf("after %q in %d pieces, SSE gets %q, want %q", c.sent, len(pieces), got, c.sse)
			}
			if got := string(closeOpenEvent(nil, r.tail, false)); got != c.ndjson {
				t.Errorf("after %q in %d pieces, NDJSON gets %q, want %q", c.sent, len(pieces), got, c.ndjson)
			}
		}
	}
}

func splitBytes(s string) []string {
	var out []string
	for i := range len(s) {
		out = append(out, s[i:i+1])
	}
	return out
}
