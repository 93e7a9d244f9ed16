package report

import (
	"fmt"
	"time"
)

// Millis formats d in milliseconds with three decimals.
func Millis(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}

// SignedMillis formats d in milliseconds with a sign.
func SignedMillis(d time.Duration) string {
	return fmt.Sprintf("%+.3f", float64(d)/float64(time.Millisecond))
}

// Ratio formats a/b with two decimals, or "n/a" when b is zero.
func Ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// MB formats a size in bytes as megabytes (10^6 bytes) with one decimal.
func MB(bytes int64) string {
	return fmt.Sprintf("%.1f", float64(bytes)/1e6)
}

// NA is the cell of a value that does not apply, such as the CPU time of
// a direct connection, which has no proxy process.
const NA = "–"
