package config

import (
	"math"
	"reflect"
	"regexp"
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

// duration decodes a Go duration string. A plain number is rejected
// because it has no unit, except 0, which means the same in every unit.
func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.add(n, path, "want a duration such as 30s or 5m, got %s", describe(n))
		return
	}
	if n.Tag == "!!int" || n.Tag == "!!float" {
		var f float64
		if n.Decode(&f) == nil && f == 0 {
			v.SetInt(0)
			return
		}
		d.add(n, path, "want a duration with a unit such as %[1]ss or %[1]sms, got the plain number %[1]s",
			n.Value)
		return
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		d.add(n, path, "invalid duration %s: want a number with a unit (ns, us, ms, s, m, h), "+
			"such as 90s, 5m or 1h30m", describe(n))
		return
	}
	v.SetInt(int64(dur))
}

// byteSize decodes a size in bytes: an integer, or a string that
// ParseByteSize accepts.
func (d *decoder) byteSize(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.add(n, path, "want a size such as 1048576 or 64MiB, got %s", describe(n))
		return
	}
	if n.Tag == "!!int" {
		var i int64
		if err := n.Decode(&i); err != nil {
			d.add(n, path, "size %s is out of range", describe(n))
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
