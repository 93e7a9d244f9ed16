package config

import (
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// scalar decodes a string, bool, integer or float.
func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.add(n, path, "want %s, got %s", want(v.Kind()), describe(n))
		return
	}
	if isNull(n) {
		d.add(n, path, "missing value, write \"\" for an empty string")
		return
	}
	switch v.Kind() {
	case reflect.String:
		// Any scalar is text: a name or password may look like a number.
		v.SetString(n.Value)
	case reflect.Bool:
		d.boolean(n, v, path)
	case reflect.Int, reflect.Int64, reflect.Uint32:
		d.integer(n, v, path)
	case reflect.Float64:
		d.float(n, v, path)
	default:
		d.add(n, path, "cannot decode into %s", v.Type())
	}
}

func want(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Uint32:
		return "an integer"
	case reflect.Float64:
		return "a number"
	}
	return "a " + k.String()
}

func (d *decoder) boolean(n *yaml.Node, v reflect.Value, path string) {
	var b bool
	if n.Tag != "!!bool" || n.Decode(&b) != nil {
		d.add(n, path, "want true or false, got %s", describe(n))
		return
	}
	v.SetBool(b)
}

// wholeNumber matches an integer that YAML resolved as a float because it
// does not fit in 64 bits.
var wholeNumber = regexp.MustCompile(`^[-+]?[0-9_]+$`)

func (d *decoder) integer(n *yaml.Node, v reflect.Value, path string) {
	if n.Tag == "!!float" && wholeNumber.MatchString(n.Value) {
		d.add(n, path, "integer %s is out of range", describe(n))
		return
	}
	if n.Tag != "!!int" {
		d.add(n, path, "want an integer, got %s", describe(n))
		return
	}
	var i int64
	if err := n.Decode(&i); err != nil {
		d.add(n, path, "integer %s is out of range", describe(n))
		return
	}
	if v.Kind() == reflect.Uint32 {
		if i < 0 || i > math.MaxUint32 {
			d.add(n, path, "want an integer from 0 to %d, got %d", uint32(math.MaxUint32), i)
			return
		}
		v.SetUint(uint64(i))
		return
	}
	if v.OverflowInt(i) {
		d.add(n, path, "integer %d is out of range", i)
		return
	}
	v.SetInt(i)
}

func (d *decoder) float(n *yaml.Node, v reflect.Value, path string) {
	var f float64
	if n.Tag != "!!int" && n.Tag != "!!float" || n.Decode(&f) != nil {
		d.add(n, path, "want a number, got %s", describe(n))
		return
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		d.add(n, path, "want a finite number, got %s", describe(n))
		return
	}
	v.SetFloat(f)
}

// maxDurationHours is the whole number of hours in the largest
// time.Duration, about 292 years.
const maxDurationHours = math.MaxInt64 / int64(time.Hour)

// durationSyntax matches what time.ParseDuration accepts apart from the
// range, so that an error for a string it matches means out of range.
var durationSyntax = regexp.MustCompile(
	`^[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+$`)

// duration decodes a Go duration string. A plain number is rejected
// because it has no unit, except 0, which means the same in every unit.
func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.add(n, path, "want a duration such as 30s or 5m, got %s", describe(n))
		return
	}
	if n.Tag == "!!int" || n.Tag == "!!float" {
		d.plainDuration(n, v, path)
		return
	}
	dur, err := time.ParseDuration(n.Value)
	switch {
	case err == nil:
		v.SetInt(int64(dur))
	case !durationSyntax.MatchString(n.Value):
		d.add(n, path, "invalid duration %s: want a number with a unit (ns, us, ms, s, m, h), "+
			"such as 90s, 5m or 1h30m", describe(n))
	case strings.HasPrefix(n.Value, "-"):
		// Validation rejects a negative value for every duration setting.
		d.add(n, path, "must not be negative, got %s", describe(n))
	default:
		d.add(n, path, "duration %s is out of range, want at most %dh (about 292 years)",
			describe(n), maxDurationHours)
	}
}

// plainDuration decodes a YAML number given for a duration, where only 0
// is accepted. The message for another number suggests it in seconds and
// in milliseconds, unless that suggestion would itself be rejected.
func (d *decoder) plainDuration(n *yaml.Node, v reflect.Value, path string) {
	var f float64
	if n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		d.add(n, path, "want a duration with a unit such as 90s or 5m, got %s", describe(n))
		return
	}
	switch {
	case f == 0:
		v.SetInt(0)
		return
	case f < 0:
		// Validation rejects a negative value for every duration setting.
		d.add(n, path, "must not be negative and needs a unit such as 90s or 5m, "+
			"got the plain number %s", n.Value)
		return
	}

	// Formatting with 'f' writes plain digits, such as 1000 for 1e3 or
	// 1_000 and 16 for 0x10, which time.ParseDuration accepts.
	number := strconv.FormatFloat(f, 'f', -1, 64)
	var examples []string
	for _, unit := range []string{"s", "ms"} {
		if dur, err := time.ParseDuration(number + unit); err == nil && dur > 0 {
			examples = append(examples, number+unit)
		}
	}
	switch {
	case len(examples) > 0:
		d.add(n, path, "want a duration with a unit such as %s, got the plain number %s",
			strings.Join(examples, " or "), n.Value)
	case f > 1:
		d.add(n, path, "the plain number %s is out of range in seconds and in milliseconds, "+
			"want a duration with a unit of at most %dh (about 292 years)", n.Value, maxDurationHours)
	default:
		// The number is below a nanosecond in both units.
		d.add(n, path, "want a duration with a unit such as 90s or 5m, got the plain number %s",
			n.Value)
	}
}

// byteSize decodes a size in bytes: an integer, or a string that
// ParseByteSize accepts.
func (d *decoder) byteSize(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.add(n, path, "want a size such as 1048576 or 64KiB, got %s", describe(n))
		return
	}
	if n.Tag == "!!int" {
		var i int64
		if err := n.Decode(&i); err != nil {
			d.add(n, path, "invalid size %s: %v", describe(n), errSizeTooLarge)
			return
		}
		v.SetInt(i)
		return
	}
	size, err := ParseByteSize(n.Value)
	if err != nil {
		d.add(n, path, "%v", err)
		return
	}
	v.SetInt(size)
}
