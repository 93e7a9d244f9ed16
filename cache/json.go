package cache

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// errDuplicateKey marks a JSON object with two keys that are equal when
// compared without case. Go's encoding/json, which Ollama uses, matches
// keys without case and keeps the last one, so such a body could mean
// something other than what this package reads from it.
var errDuplicateKey = errors.New("duplicate JSON object key")

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json does when it decodes, so that two bodies Ollama reads
// alike also encode alike.
func appendString[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			dst = appendASCII(dst, b)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, `\u202`...)
			dst = append(dst, hexDigits[r&0xf])
		default:
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

func appendASCII(dst []byte, b byte) []byte {
	switch b {
	case '"', '\\':
		return append(dst, '\\', b)
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	}
	if b < 0x20 {
		return append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
	}
	return append(dst, b)
}

// appendValue appends v as compact JSON, keeping the order of object
// members. fastjson's own MarshalTo is not used because it quotes strings
// with control characters in Go syntax, which is not valid JSON.
func appendValue(dst []byte, v *fastjson.Value) []byte {
	switch v.Type() {
	case fastjson.TypeObject:
		dst = append(dst, '{')
		first := true
		v.GetObject().Visit(func(key []byte, mv *fastjson.Value) {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendString(dst, key)
			dst = append(dst, ':')
			dst = appendValue(dst, mv)
		})
		return append(dst, '}')
	case fastjson.TypeArray:
		dst = append(dst, '[')
		for i, e := range v.GetArray() {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendValue(dst, e)
		}
		return append(dst, ']')
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return appendString(dst, s)
	default:
		// Numbers are written as received; true, false and null as such.
		return v.MarshalTo(dst)
	}
}

// member is one key and value of a JSON object.
type member struct {
	key   []byte
	value *fastjson.Value
}

// appendCanonical appends v as canonical JSON: compact, object keys sorted
// bytewise, strings re-encoded and numbers in one form, so that bodies that
// differ only in layout give the same bytes.
func appendCanonical(dst []byte, v *fastjson.Value) ([]byte, error) {
	switch v.Type() {
	case fastjson.TypeObject:
		return appendCanonicalObject(dst, sortedMembers(v.GetObject()), nil)
	case fastjson.TypeArray:
		dst = append(dst, '[')
		for i, e := range v.GetArray() {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendCanonical(dst, e); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return appendString(dst, s), nil
	case fastjson.TypeNumber:
		return appendCanonicalNumber(dst, v), nil
	default:
		return v.MarshalTo(dst), nil
	}
}

// appendCanonicalObject appends the sorted members ms as an object. When
// replace is set, it is called for each member and may return the bytes to
// write in place of the value, or skip the member.
func appendCanonicalObject(
	dst []byte,
	ms []member,
	replace func(m member) (raw []byte, skip bool),
) ([]byte, error) {
	if err := checkDuplicateKeys(ms); err != nil {
		return dst, err
	}
	dst = append(dst, '{')
	first := true
	for _, m := range ms {
		var raw []byte
		if replace != nil {
			var skip bool
			if raw, skip = replace(m); skip {
				continue
			}
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendString(dst, m.key)
		dst = append(dst, ':')
		if raw != nil {
			dst = append(dst, raw...)
			continue
		}
		var err error
		if dst, err = appendCanonical(dst, m.value); err != nil {
			return dst, err
		}
	}
	return append(dst, '}'), nil
}

func sortedMembers(o *fastjson.Object) []member {
	ms := make([]member, 0, o.Len())
	o.Visit(func(key []byte, v *fastjson.Value) {
		ms = append(ms, member{key: key, value: v})
	})
	slices.SortFunc(ms, func(a, b member) int { return bytes.Compare(a.key, b.key) })
	return ms
}

// checkDuplicateKeys returns errDuplicateKey when two keys of ms are equal
// without regard to case.
func checkDuplicateKeys(ms []member) error {
	if len(ms) <= 8 {
		for i := range ms {
			for j := i + 1; j < len(ms); j++ {
				if bytes.EqualFold(ms[i].key, ms[j].key) {
					return errDuplicateKey
				}
			}
		}
		return nil
	}
	seen := make(map[string]struct{}, len(ms))
	for _, m := range ms {
		k := strings.ToLower(string(m.key))
		if _, ok := seen[k]; ok {
			return errDuplicateKey
		}
		seen[k] = struct{}{}
	}
	return nil
}

// appendCanonicalNumber writes integer literals as received (so that large
// seeds keep every digit) and every other number in its shortest float64
// form, integral values without a fraction, so that 0, 0.0 and 0e0 agree.
func appendCanonicalNumber(dst []byte, v *fastjson.Value) []byte {
	start := len(dst)
	dst = v.MarshalTo(dst)
	raw := dst[start:]
	if isIntegerLiteral(raw) {
		if string(raw) == "-0" {
			return append(dst[:start], '0')
		}
		return dst
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return dst
	}
	dst = dst[:start]
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.AppendInt(dst, int64(f), 10)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64)
}

func isIntegerLiteral(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
