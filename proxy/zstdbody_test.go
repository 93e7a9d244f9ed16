package proxy

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestZstdBombStopsAtLimit decodes a body of three frames that each
// decode to 48 MiB of zeros and, written by a streaming encoder, declare
// no content size, with a limit of 16 MiB. Decoding must stop once the
// output passes the limit, so it allocates about the limit in chunks and
// a window, not the frames' output.
func TestZstdBombStopsAtLimit(t *testing.T) {
	var frame bytes.Buffer
	enc, err := zstd.NewWriter(&frame, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	for range 48 {
		if _, err := enc.Write(make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat(frame.Bytes(), 3)
	const limit = 16 << 20
	z := newZstdDecoders()

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = z.decode(body, limit)
	runtime.ReadMemStats(&after)

	if !errors.Is(err, errDecodedTooLarge) {
		t.Fatalf("decode of a %d-byte bomb: error %v, want errDecodedTooLarge", len(body), err)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 40<<20 {
		t.Errorf("decode allocated %d MiB for a limit of 16 MiB, want at most 40 MiB",
			allocated>>20)
	}
}

// TestZstdDecodeWhole decodes a body of two frames whole, through a
// pooled decoder the second time.
func TestZstdDecodeWhole(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model":"m","input":"hi"}`
	body := append(enc.EncodeAll([]byte(want[:10]), nil), enc.EncodeAll([]byte(want[10:]), nil)...)
	z := newZstdDecoders()
	for i := range 2 {
		got, err := z.decode(body, 1<<20)
		if err != nil {
			t.Fatalf("decode %d: %v", i, err)
		}
		if string(got) != want {
			t.Errorf("decode %d: %q, want %q", i, got, want)
		}
	}
}

// TestZstdWindowOverMaxRejected decodes a body from a streaming encoder
// with a 32 MiB window, which exceeds zstdMaxWindow. The encoder declares
// a smaller window for content that fits one, so the body is 40 MiB.
func TestZstdWindowOverMaxRejected(t *testing.T) {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithWindowSize(32<<20))
	if err != nil {
		t.Fatal(err)
	}
	for range 40 {
		if _, err := enc.Write(make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = newZstdDecoders().decode(buf.Bytes(), 64<<20)
	if !errors.Is(err, zstd.ErrWindowSizeExceeded) {
		t.Errorf("decode with a 32 MiB window: error %v, want zstd.ErrWindowSizeExceeded", err)
	}
}
