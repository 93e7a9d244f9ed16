package config

import (
	"fmt"
	"math"
	"math/big"
	"strings"
)

// byteUnits maps each accepted unit, in lower case, to its multiplier.
// Decimal units (k, KB, MB, ...) are powers of 1000 and binary units
// (Ki, KiB, MiB, ...) are powers of 1024, as in SI and IEC 80000-13.
var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1e6, "mb": 1e6, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1e9, "gb": 1e9, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1e12, "tb": 1e12, "ti": 1 << 40, "tib": 1 << 40,
}

// ParseByteSize parses a size in bytes: a non-negative number with an
// optional unit, such as "1024", "512k", "64MiB", "1.5 GB". Units are case
// insensitive. The units k, KB, M, MB, G, GB, T and TB are powers of 1000,
// and Ki, KiB, Mi, MiB, Gi, GiB, Ti and TiB are powers of 1024. A fraction is accepted
// only when the result is a whole number of bytes. The result must fit in
// an int64.
func ParseByteSize(s string) (int64, error) {
	number, unit := splitNumber(strings.TrimSpace(s))
	if number == "" {
		return 0, fmt.Errorf("invalid size %q: want a number of bytes with an optional unit, "+
			"such as 1048576, 512k or 64KiB", s)
	}
	mult, ok := byteUnits[strings.ToLower(strings.TrimSpace(unit))]
	if !ok && strings.ContainsAny(unit, "0123456789") {
		// A digit after the number means the number itself is malformed,
		// as in 1e6, 1_000k or 1.2.3, and not that the unit is unknown.
		return 0, fmt.Errorf("invalid size %q: malformed number, want digits with no exponent "+
			"or separator and an optional unit, such as 1048576, 512k or 64KiB", s)
	}
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q, want B, k, KB, KiB, MB, MiB, "+
			"GB, GiB, TB or TiB", s, strings.TrimSpace(unit))
	}
	value, ok := new(big.Rat).SetString(number)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: malformed number %q", s, number)
	}
	value.Mul(value, new(big.Rat).SetInt64(mult))
	if !value.IsInt() {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", s)
	}
	n := value.Num()
	if !n.IsInt64() {
		return 0, fmt.Errorf("invalid size %q: %w", s, errSizeTooLarge)
	}
	return n.Int64(), nil
}

var errSizeTooLarge = fmt.Errorf("out of range, larger than %d bytes", int64(math.MaxInt64))

// splitNumber splits s into a leading decimal number (digits with at most
// one inner or trailing dot) and the rest. It returns "" as the number when
// s does not start with a digit.
func splitNumber(s string) (number, rest string) {
	i, dots := 0, 0
	for i < len(s) && (isDigit(s[i]) || s[i] == '.' && dots == 0) {
		if s[i] == '.' {
			dots++
		}
		i++
	}
	if i == 0 || !isDigit(s[0]) {
		return "", s
	}
	return s[:i], s[i:]
}

func isDigit(c byte) bool {
	return c >= '0' && c <= '9'
}
