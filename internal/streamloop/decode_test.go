package streamloop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http/httputil"
	"testing"
)

// decodeSplit decodes in, fed in pieces of the given size, and returns the
// payload, the bytes after the body and whether the body ended.
func decodeSplit(t *testing.T, d Decoder, in []byte, piece int) ([]byte, int, bool, error) {
	t.Helper()
	var out []byte
	extra := 0
	for len(in) > 0 {
		n := min(piece, len(in))
		var err error
		var e int
		out, e, err = d.Decode(in[:n], out)
		if err != nil {
			return out, 0, false, err
		}
		extra += e
		in = in[n:]
	}
	return out, extra, d.Done(), nil
}

func TestDecodeChunked(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		payload string
		extra   int
		done    bool
	}{
		{"one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello", 0, true},
		{"two chunks", "3\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n", "abc0123456789", 0, true},
		{"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", 0, true},
		{"extension", "3;name=value\r\nabc\r\n0;last\r\n\r\n", "abc", 0, true},
		{"bare LF after size", "3\nabc\r\n0\n\r\n", "abc", 0, true},
		{"trailer fields", "3\r\nabc\r\n0\r\nX-Done: 1\r\nX-More: 2\r\n\r\n", "abc", 0, true},
		{"bytes after the end", "3\r\nabc\r\n0\r\n\r\nHTTP/1.1", "abc", 8, true},
		{"unfinished", "3\r\nabc\r\n", "abc", 0, false},
		{"no last chunk trailer yet", "3\r\nabc\r\n0\r\n", "abc", 0, false},
	}
	for _, c := range cases {
		for _, piece := range []int{1, 2, 7, len(c.in)} {
			payload, extra, done, err := decodeSplit(t, NewDecoder(Chunked, 0), []byte(c.in), piece)
			if err != nil {
				t.Fatalf("%s, pieces of %d: %v", c.name, piece, err)
			}
			if string(payload) != c.payload {
				t.Errorf("%s, pieces of %d: payload %q, want %q", c.name, piece, payload, c.payload)
			}
			if extra != c.extra {
				t.Errorf("%s, pieces of %d: %d bytes after the body, want %d", c.name, piece, extra, c.extra)
			}
			if done != c.done {
				t.Errorf("%s, pieces of %d: done %v, want %v", c.name, piece, done, c.done)
			}
		}
	}
}

func TestDecodeChunkedRejectsBadFraming(t *testing.T) {
	cases := map[string]string{
		"no size":            "\r\nabc\r\n",
		"not hex":            "x\r\nabc\r\n",
		"garbage after size": "3x\r\nabc\r\n",
		"CR without LF":      "3\rabc\r\n",
		"data too long":      "3\r\nabcd\r\n",
		"LF only after data": "3\r\nabc\n0\r\n\r\n",
		"size overflows":     "1000000000000000\r\n",
		"CR in trailer":      "0\r\nX: 1\rY\r\n\r\n",
	}
	for name, in := range cases {
		_, _, _, err := decodeSplit(t, NewDecoder(Chunked, 0), []byte(in), 1)
		if !errors.Is(err, ErrFraming) {
			t.Errorf("%s: error %v, want ErrFraming", name, err)
		}
	}
}

func TestDecodeLength(t *testing.T) {
	payload, extra, done, err := decodeSplit(t, NewDecoder(Length, 5), []byte("helloXY"), 3)
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != "hello" {
		t.Errorf("payload %q, want hello", payload)
	}
	if extra != 2 {
		t.Errorf("%d bytes after the body, want 2", extra)
	}
	if !done {
		t.Error("body of 5 bytes not done after 5 bytes")
	}
	empty := NewDecoder(Length, 0)
	if !empty.Done() {
		t.Error("empty body not done at once")
	}
}

func TestDecodeUntilClose(t *testing.T) {
	payload, extra, done, err := decodeSplit(t, NewDecoder(UntilClose, 0), []byte("all of it"), 4)
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != "all of it" {
		t.Errorf("payload %q, want all of it", payload)
	}
	if extra != 0 {
		t.Errorf("%d bytes after the body, want 0", extra)
	}
	if done {
		t.Error("body that ends at close is done before the close")
	}
}

func TestDecodeInPlace(t *testing.T) {
	const carried = "start of a line "
	in := "4\r\nabcd\r\n1;x=y\r\ne\r\n0\r\n\r\nnext"
	buf := []byte(carried + in)
	d := NewDecoder(Chunked, 0)
	// The payload goes after the carried bytes, over the input it came in.
	out, extra, err := d.Decode(buf[len(carried):], buf[:len(carried)])
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != carried+"abcde" {
		t.Errorf("payload = %q, want %q", out, carried+"abcde")
	}
	if &out[0] != &buf[0] {
		t.Error("payload left the input's array")
	}
	if extra != len("next") || !d.Done() {
		t.Errorf("extra = %d, done = %v, want 4 bytes after a complete body", extra, d.Done())
	}
}

// FuzzDecodeChunked checks the Decoder against Go's own chunked reader:
// for any input both accept, the payloads match, however the input is
// split.
func FuzzDecodeChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), uint8(1))
	f.Add([]byte("3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"), uint8(2))
	f.Add([]byte("10\r\n0123456789abcdef\r\n0\r\n\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		piece := int(split%16) + 1
		payload, _, done, err := decodeSplit(t, NewDecoder(Chunked, 0), in, piece)
		if err != nil || !done {
			return
		}
		whole, _, _, err := decodeSplit(t, NewDecoder(Chunked, 0), in, len(in))
		if err != nil {
			t.Fatalf("accepted in pieces of %d but not whole: %v", piece, err)
		}
		if !bytes.Equal(payload, whole) {
			t.Fatalf("payload in pieces %q, whole %q", payload, whole)
		}
		want, err := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in))))
		if err != nil {
			// Go's reader is stricter about some extensions and line ends.
			return
		}
		if !bytes.Equal(payload, want) {
			t.Fatalf("payload %q, Go's chunked reader read %q", payload, want)
		}
	})
}

func BenchmarkDecodeChunked(b *testing.B) {
	line := `{"model":"llama3:8b","created_at":"2026-12-04T15:56:26.467480373Z",` +
		`"message":{"role":"assistant","content":" dreams"},"done":false}` + "\n"
	in := []byte(fmt.Sprintf("%x\r\n%s\r\n", len(line), line))
	out := make([]byte, 0, 1024)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		d := NewDecoder(Chunked, 0)
		if _, _, err := d.Decode(in, out[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
