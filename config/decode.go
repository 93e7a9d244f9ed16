package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the YAML nodes one document may expand to, because
// aliases let a small file repeat the same subtree many times over
// ("billion laughs"). A configuration has a few hundred nodes.
const maxNodes = 100_000

// decoder decodes a yaml.Node tree over a Config by reflection, following
// the yaml struct tags, and records every problem with its path and line
// instead of stopping at the first.
type decoder struct {
	// lines maps the path of every decoded value to its line.
	lines    map[string]int
	problems []Problem
	// visited counts nodes against maxNodes.
	visited int
	// merging holds the mappings whose "<<" keys are being expanded, to
	// stop a mapping that merges itself through an alias.
	merging map[*yaml.Node]bool
}

// decodeYAML decodes data over cfg. It records the line of every path it
// sets in lines and returns the problems found. It returns false when the
// document as a whole could not be read.
func decodeYAML(data []byte, cfg *Config, lines map[string]int) ([]Problem, bool) {
	d := &decoder{lines: lines, merging: map[*yaml.Node]bool{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))

	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, true // An empty file sets nothing.
		}
		return []Problem{syntaxProblem(err)}, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.add(&extra, "", "the file contains more than one YAML document, want one")
	case !errors.Is(err, io.EOF):
		d.problems = append(d.problems, syntaxProblem(err))
	}

	if len(doc.Content) == 0 {
		return d.problems, true
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode && !isNull(root) {
		d.add(root, "", "want a mapping of settings at the top of the file, got %s",
			describe(root))
		return d.problems, false
	}
	d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	return d.problems, d.visited < maxNodes
}

var yamlLine = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

// syntaxProblem turns an error of the YAML parser into a Problem, moving
// the line it names into Problem.Line.
func syntaxProblem(err error) Problem {
	msg := err.Error()
	p := Problem{Message: "invalid YAML: " + yamlLine.ReplaceAllString(msg, "")}
	if m := yamlLine.FindStringSubmatch(msg); m != nil && m[1] != "" {
		p.Line, _ = strconv.Atoi(m[1])
	}
	return p
}

func (d *decoder) add(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{
		Path:    path,
		Line:    n.Line,
		Message: fmt.Sprintf(format, args...),
	})
}

// resolve follows aliases and counts n against maxNodes. It returns nil
// once the budget is spent, after recording one problem.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	d.visited++
	if d.visited == maxNodes {
		d.add(n, "", "the document expands to more than %d values, "+
			"check for aliases that repeat large sections", maxNodes)
	}
	if d.visited >= maxNodes {
		return nil
	}
	return n
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	nodeType     = reflect.TypeFor[Node]()
	keyType      = reflect.TypeFor[Key]()
)

// decode decodes n into v, dispatching on the type of v.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n = d.resolve(n); n == nil {
		return
	}
	if v.Type() == durationType {
		d.duration(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.Map:
		d.mapping(n, v, path)
	case reflect.Pointer:
		d.pointer(n, v, path)
	default:
		d.scalar(n, v, path)
	}
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// describe names what n is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return strconv.Quote(v)
}

// keyValue is one entry of a YAML mapping.
type keyValue struct {
	key, value *yaml.Node
	// merged marks entries brought in by a "<<" merge key. Explicit
	// entries override them and may repeat their keys.
	merged bool
}

// entries lists the entries of mapping n: those merged in through "<<"
// first, in the order of precedence YAML gives them, then n's own.
func (d *decoder) entries(n *yaml.Node, path string) []keyValue {
	if d.merging[n] {
		d.add(n, path, "<<: the mapping merges itself")
		return nil
	}
	d.merging[n] = true
	defer delete(d.merging, n)

	var merged, own []keyValue
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merged = append(merged, d.mergeEntries(v, path)...)
			continue
		}
		own = append(own, keyValue{key: k, value: v})
	}
	return append(merged, own...)
}

// mergeEntries expands the value of a "<<" key: a mapping, or a list of
// mappings of which earlier ones take precedence.
func (d *decoder) mergeEntries(v *yaml.Node, path string) []keyValue {
	if v = d.resolve(v); v == nil {
		return nil
	}
	var sources []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		sources = []*yaml.Node{v}
	case yaml.SequenceNode:
		for i := len(v.Content) - 1; i >= 0; i-- {
			sources = append(sources, v.Content[i])
		}
	}
	var out []keyValue
	for _, src := range sources {
		if src = d.resolve(src); src == nil {
			return out
		}
		if src.Kind != yaml.MappingNode {
			d.add(src, path, "<<: want a mapping or a list of mappings, got %s", describe(src))
			continue
		}
		for _, e := range d.entries(src, path) {
			e.merged = true
			out = append(out, e)
		}
	}
	if len(sources) == 0 {
		d.add(v, path, "<<: want a mapping or a list of mappings, got %s", describe(v))
	}
	return out
}

// keyName returns the text of a mapping key, recording a problem when the
// key is not a scalar or repeats an explicit key of the same mapping.
func (d *decoder) keyName(e keyValue, path string, seen map[string]int) (string, bool) {
	if e.key.Kind != yaml.ScalarNode {
		d.add(e.key, path, "want a plain key, got %s", describe(e.key))
		return "", false
	}
	name := e.key.Value
	if e.merged {
		return name, true
	}
	if first, dup := seen[name]; dup {
		d.add(e.key, joinPath(path, name), "duplicate key, first set on line %d", first)
		return "", false
	}
	seen[name] = e.key.Line
	return name, true
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// structure decodes a mapping over the fields of struct v, keyed by their
// yaml tags. Fields the mapping leaves out keep their values.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping, got %s", describe(n))
		return
	}
	fields, names := yamlFields(v.Type())
	seen := map[string]int{}
	for _, e := range d.entries(n, path) {
		name, ok := d.keyName(e, path, seen)
		if !ok {
			continue
		}
		p := joinPath(path, name)
		f, known := fields[name]
		if !known {
			d.add(e.key, p, "unknown key%s", didYouMean(name, names))
			continue
		}
		d.lines[p] = e.key.Line
		d.field(e.value, f, v.FieldByIndex(f.Index), p)
	}
}

// yamlFields maps the yaml tag of each exported field of t to the field,
// and lists the tags in field order.
func yamlFields(t reflect.Type) (map[string]reflect.StructField, []string) {
	fields := make(map[string]reflect.StructField, t.NumField())
	var names []string
	for _, f := range reflect.VisibleFields(t) {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		fields[name] = f
		names = append(names, name)
	}
	return fields, names
}

// field decodes one struct field. An int64 field whose name ends in Bytes
// is a size and also accepts a string with a unit.
func (d *decoder) field(n *yaml.Node, f reflect.StructField, v reflect.Value, path string) {
	if f.Type.Kind() == reflect.Int64 && strings.HasSuffix(f.Name, "Bytes") {
		if n = d.resolve(n); n != nil {
			d.byteSize(n, v, path)
		}
		return
	}
	d.decode(n, v, path)
}

// sequence decodes a list, which replaces the whole of v. Null and the
// empty list both set v to nil.
func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) || n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		v.SetZero()
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n, path, "want a list, got %s", describe(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.lines[p] = item.Line
		elem := newElem(v.Type().Elem())
		d.decode(item, elem, p)
		out = reflect.Append(out, elem)
	}
	v.Set(out)
}

// newElem returns the starting value of a list element: the defaults of
// a node or key, the zero value of anything else.
func newElem(t reflect.Type) reflect.Value {
	elem := reflect.New(t).Elem()
	switch t {
	case nodeType:
		elem.Set(reflect.ValueOf(DefaultNode("")))
	case keyType:
		elem.Set(reflect.ValueOf(defaultKey()))
	}
	return elem
}

// mapping decodes a mapping into a map with string keys. Each entry is
// decoded over the entry of the same key already in v, so that a file may
// change one field of one entry. Null is the empty mapping.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	seen := map[string]int{}
	for _, e := range d.entries(n, path) {
		name, ok := d.keyName(e, path, seen)
		if !ok {
			continue
		}
		p := joinPath(path, name)
		d.lines[p] = e.key.Line
		key := reflect.ValueOf(name)
		elem := newElem(v.Type().Elem())
		if old := v.MapIndex(key); old.IsValid() {
			elem.Set(old)
		}
		d.decode(e.value, elem, p)
		v.SetMapIndex(key, elem)
	}
}

// pointer decodes into a new value and points v at it, leaving v as it
// was when decoding fails.
func (d *decoder) pointer(n *yaml.Node, v reflect.Value, path string) {
	elem := reflect.New(v.Type().Elem())
	if !v.IsNil() {
		elem.Elem().Set(v.Elem())
	}
	before := len(d.problems)
	d.scalar(n, elem.Elem(), path)
	if len(d.problems) == before {
		v.Set(elem)
	}
}
