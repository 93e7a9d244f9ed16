package proxy

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/balancer"
)

// chunkReader returns one line per Read, as a node's chunked stream does.
type chunkReader struct {
	lines [][]byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.lines) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.lines[0])
	c.lines[0] = c.lines[0][n:]
	if len(c.lines[0]) == 0 {
		c.lines = c.lines[1:]
	}
	return n, nil
}

func newTestRelay(body io.Reader, sse bool) *relay {
	r := relayPool.Get().(*relay)
	r.reset(body)
	r.s = &Server{}
	r.rs = &reqState{}
	r.sse = sse
	r.lease = balancer.NewLease(balancer.NewNode("n", nil, 1, 1))
	r.watch = &clientWatch{done: make(chan struct{})}
	return r
}

func TestRelayKeepsLines(t *testing.T) {
	lines := []string{`{"a":1}` + "\n", `{"b":2}` + "\n", `{"done":false}` + "\n"}
	var src [][]byte
	for _, l := range lines {
		src = append(src, []byte(l))
	}
	got := readAll(t, newTestRelay(&chunkReader{lines: src}, false))
	if strings.Join(got, "|") != strings.Join(lines, "|") {
		t.Errorf("reads %q, want one line per read %q", got, lines)
	}
}

// readAll returns what each Read of r gave, until io.EOF.
func readAll(t *testing.T, r *relay) []string {
	t.Helper()
	buf := make([]byte, 4096)
	var got []string
	for {
		n, err := r.Read(buf)
		if n > 0 {
			got = append(got, string(buf[:n]))
		}
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRelaySendsSSEEventInOneRead(t *testing.T) {
	events := []string{"data: {\"a\":1}\n\n", "data: {\"b\":2}\r\n\r\n", "data: [DONE]\n\n"}
	var src [][]byte
	for _, e := range events {
		src = append(src, []byte(e))
	}
	got := readAll(t, newTestRelay(&chunkReader{lines: src}, true))
	if strings.Join(got, "|") != strings.Join(events, "|") {
		t.Errorf("reads %q, want one event per read %q", got, events)
	}
}

func TestRelayWaitsForEventEnd(t *testing.T) {
	// The blank line arrives in a later read of the node's stream, and the
	// data line waits for it, so that the event leaves whole.
	src := [][]byte{[]byte("data: {\"a\":1}\n"), []byte("\n"), []byte("data: [DONE]\n\n")}
	got := readAll(t, newTestRelay(&chunkReader{lines: src}, true))
	want := []string{"data: {\"a\":1}\n\n", "data: [DONE]\n\n"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("reads %q, want %q", got, want)
	}
}

func TestRelayWaitsForLineEnd(t *testing.T) {
	src := [][]byte{[]byte(`{"a":1}` + "\n" + `{"b"`), []byte(`:2}` + "\n"), []byte(`{"c":3}`)}
	got := readAll(t, newTestRelay(&chunkReader{lines: src}, false))
	// The last line has no newline, and the body's normal end sends it.
	want := []string{`{"a":1}` + "\n", `{"b":2}` + "\n", `{"c":3}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("reads %q, want %q", got, want)
	}
}

func TestRelaySplitsLongLine(t *testing.T) {
	long := append(bytes.Repeat([]byte("x"), 10000), '\n')
	r := newTestRelay(&chunkReader{lines: [][]byte{long}}, false)
	buf := make([]byte, 4096)
	var out []byte
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			break
		}
	}
	if !bytes.Equal(out, long) {
		t.Errorf("got %d bytes, want the %d-byte line intact", len(out), len(long))
	}
}

func TestRelayEndsBrokenStreamWithErrorLine(t *testing.T) {
	cases := []struct {
		name       string
		sse        bool
		whole, cut string
		errorLine  string
	}{
		{"ndjson", false, `{"a":1}` + "\n", `{"partial":`,
			`{"error":"node n failed during the response: node closed the connection before the response body was complete"}` + "\n"},
		{"sse", true, "data: {\"a\":1}\n\n", "data: {\"partial\":1}\n",
			`data: {"error":{"message":"node n failed during the response: node closed the connection before the response body was complete",` +
				`"type":"api_error","param":null,"code":null}}` + "\n\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := io.MultiReader(strings.NewReader(c.whole+c.cut), errReader{io.ErrUnexpectedEOF})
			r := newTestRelay(body, c.sse)
			buf := make([]byte, 4096)
			var out []byte
			for {
				n, err := r.Read(buf)
				out = append(out, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			// The cut line or event is dropped, and the error follows the
			// last whole one.
			if want := c.whole + c.errorLine; string(out) != want {
				t.Errorf("output %q, want %q", out, want)
			}
		})
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func BenchmarkRelayLine(b *testing.B) {
	line := []byte(`{"model":"llama3:8b","created_at":"2026-12-04T15:56:26.467480373Z",` +
		`"message":{"role":"assistant","content":" dreams"},"done":false}` + "\n")
	src := &chunkReader{}
	r := newTestRelay(src, false)
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		src.lines = append(src.lines[:0], line)
		r.done = false
		if _, err := r.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestContentLines(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{"{\"done\":false}\n", true},
		{"data: {\"choices\":[]}\n", true},
		{"\n", false},
		{"\r\n", false},
		{"data: [DONE]\n", false},
		{"data: [DONE]\r\n", false},
	}
	for _, tt := range tests {
		if got := isContentLine([]byte(tt.line)); got != tt.want {
			t.Errorf("isContentLine(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}

func TestConsumeCountsOverlongLine(t *testing.T) {
	r := newTestRelay(&chunkReader{}, false)
	long := bytes.Repeat([]byte("x"), maxObservedLine+10)
	for i := 0; i < len(long); i += 64 << 10 {
		r.consume(long[i:min(i+64<<10, len(long))])
	}
	r.consume([]byte("\n{\"done\":false}\n"))
	if r.chunks != 2 {
		t.Errorf("counted %d lines, want 2: the overlong one and the short one", r.chunks)
	}
	if r.overlong || len(r.partial) != 0 {
		t.Errorf("line state not reset after the overlong line: overlong %v, %d bytes kept", r.overlong, len(r.partial))
	}
}
