package streamloop

import (
	"errors"
	"fmt"
)

// Framing is the delimitation of a response body on the wire.
type Framing uint8

const (
	// Chunked is HTTP/1.1 chunked transfer coding, trailer section
	// included.
	Chunked Framing = iota
	// Length is a body of exactly Content-Length bytes.
	Length
	// UntilClose is a body that ends when the node closes the connection.
	UntilClose
)

// ErrFraming is returned for a chunked body that breaks RFC 9112's
// grammar.
var ErrFraming = errors.New("malformed chunked encoding")

// Limits of the parts of a chunked body that are not payload.
const (
	maxSizeDigits    = 15 // keeps the chunk size below 2^60
	maxExtensionLen  = 4 << 10
	maxTrailerLength = 64 << 10
)

type decodeState uint8

const (
	stateSize decodeState = iota
	stateExtension
	stateSizeLF
	stateData
	stateDataCR
	stateDataLF
	stateTrailer
	stateTrailerLF
	stateDone
)

// Decoder takes the payload out of a body that arrives in pieces of any
// size. It keeps no bytes of its own: each call appends the payload found
// in its input to the caller's buffer. The loops use it, and so does the
// benchmark's stream load generator (bench/loadgen).
type Decoder struct {
	framing Framing
	state   decodeState
	// remaining is the number of payload bytes left in the current chunk,
	// or in the whole body for Length.
	remaining int64
	digits    int
	// sideBytes counts the bytes of the current chunk extension, or of the
	// whole trailer section.
	sideBytes int
	lineEmpty bool // the trailer line being read has no bytes yet
}

// NewDecoder returns a decoder for a body of framing f, whose size is
// length when f is Length.
func NewDecoder(f Framing, length int64) Decoder {
	d := Decoder{framing: f}
	if f == Length {
		d.remaining = length
		if length <= 0 {
			d.state = stateDone
		}
	}
	return d
}

// Done reports whether the body is complete.
func (d *Decoder) Done() bool { return d.state == stateDone }

// Decode appends the payload in in to out. It returns the extended out
// and the number of bytes of in that follow the end of the body, which
// belong to no response and make the connection unusable. out may share
// in's array when it ends at or before the start of in, because the
// payload never outgrows the bytes it came in.
func (d *Decoder) Decode(in, out []byte) ([]byte, int, error) {
	switch d.framing {
	case UntilClose:
		return append(out, in...), 0, nil
	case Length:
		if d.state == stateDone {
			return out, len(in), nil
		}
		n := int64(len(in))
		if n > d.remaining {
			n = d.remaining
		}
		out = append(out, in[:n]...)
		d.remaining -= n
		if d.remaining == 0 {
			d.state = stateDone
		}
		return out, len(in) - int(n), nil
	}
	for i := 0; i < len(in); {
		if d.state == stateData {
			n := int64(len(in) - i)
			if n > d.remaining {
				n = d.remaining
			}
			out = append(out, in[i:i+int(n)]...)
			i += int(n)
			d.remaining -= n
			if d.remaining == 0 {
				d.state = stateDataCR
			}
			continue
		}
		if d.state == stateDone {
			return out, len(in) - i, nil
		}
		if err := d.step(in[i]); err != nil {
			return out, 0, err
		}
		i++
	}
	return out, 0, nil
}

// step reads one byte of the framing around the payload.
func (d *Decoder) step(c byte) error {
	switch d.state {
	case stateSize:
		if v, ok := hexValue(c); ok {
			if d.digits == maxSizeDigits {
				return fmt.Errorf("%w: chunk size has more than %d hex digits", ErrFraming, maxSizeDigits)
			}
			d.remaining = d.remaining<<4 | int64(v)
			d.digits++
			return nil
		}
		if d.digits == 0 {
			return fmt.Errorf("%w: chunk size starts with %q", ErrFraming, c)
		}
		switch c {
		case ';', ' ', '\t':
			d.state, d.sideBytes = stateExtension, 0
		case '\r':
			d.state = stateSizeLF
		case '\n':
			d.endSizeLine()
		default:
			return fmt.Errorf("%w: invalid byte %q after chunk size", ErrFraming, c)
		}
	case stateExtension:
		switch c {
		case '\r':
			d.state = stateSizeLF
		case '\n':
			d.endSizeLine()
		default:
			d.sideBytes++
			if d.sideBytes > maxExtensionLen {
				return fmt.Errorf("%w: chunk extension longer than %d bytes", ErrFraming, maxExtensionLen)
			}
		}
	case stateSizeLF:
		if c != '\n' {
			return fmt.Errorf("%w: CR without LF after chunk size", ErrFraming)
		}
		d.endSizeLine()
	case stateDataCR:
		if c != '\r' {
			return fmt.Errorf("%w: chunk data not followed by CRLF", ErrFraming)
		}
		d.state = stateDataLF
	case stateDataLF:
		if c != '\n' {
			return fmt.Errorf("%w: chunk data not followed by CRLF", ErrFraming)
		}
		d.state, d.digits, d.remaining = stateSize, 0, 0
	case stateTrailer:
		d.sideBytes++
		if d.sideBytes > maxTrailerLength {
			return fmt.Errorf("%w: trailer section longer than %d bytes", ErrFraming, maxTrailerLength)
		}
		switch c {
		case '\r':
			d.state = stateTrailerLF
		case '\n':
			d.endTrailerLine()
		default:
			d.lineEmpty = false
		}
	case stateTrailerLF:
		if c != '\n' {
			return fmt.Errorf("%w: CR without LF in trailer section", ErrFraming)
		}
		d.endTrailerLine()
	}
	return nil
}

func (d *Decoder) endSizeLine() {
	if d.remaining == 0 {
		d.state, d.sideBytes, d.lineEmpty = stateTrailer, 0, true
		return
	}
	d.state = stateData
}

// endTrailerLine ends the body at the empty line after the trailer
// fields.
func (d *Decoder) endTrailerLine() {
	if d.lineEmpty {
		d.state = stateDone
		return
	}
	d.state, d.lineEmpty = stateTrailer, true
}

func hexValue(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
