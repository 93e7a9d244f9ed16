package config

import (
	"reflect"
	"slices"
	"strings"
)

// Change describes how one configuration differs from the one before it,
// for hot reload. Node order alone is no change.
type Change struct {
	// Added lists the nodes whose names appear only in the new config, in
	// its order.
	Added []Node
	// Removed lists the nodes whose names appear only in the old config, in
	// its order.
	Removed []Node
	// Updated lists the nodes present in both under the same name whose
	// URL, MaxConcurrent or Weight changed, in the new config's order.
	Updated []NodeChange
	// Settings lists the YAML paths of the changed settings other than
	// nodes, sorted. Structs are compared field by field, so a path names
	// a leaf such as "queue.aging". A list counts as one value
	// ("auth.keys"), and queue classes are compared one by one
	// ("queue.classes.batch").
	Settings []string
	// Restart lists the Settings that a running proxy cannot apply because
	// they are bound at start: the listeners, max_header_bytes,
	// max_body_bytes and read_timeout (fasthttp reads them without a
	// lock), and every
	// setting under redis, cache and log. The rate limiter and the cache
	// share the Redis server of the start, so a reload applies no redis
	// setting to either. KeepRestartSettings keeps their running values.
	Restart []string
}

// NodeChange is a node whose settings changed between two configs.
type NodeChange struct {
	Old, New Node
}

// restartPaths are the settings bound at start, see Change.Restart. A
// section covers every setting inside it.
var restartPaths = []string{"listen", "admin.listen", "max_header_bytes", "max_body_bytes",
	"read_timeout", "redis", "cache", "log"}

// Diff returns what changed from prev to next. A nil config counts as the
// zero Config.
func Diff(prev, next *Config) Change {
	if prev == nil {
		prev = &Config{}
	}
	if next == nil {
		next = &Config{}
	}
	var c Change
	c.diffNodes(prev.Nodes, next.Nodes)
	diffValues(reflect.ValueOf(*prev), reflect.ValueOf(*next), "", &c.Settings)
	slices.Sort(c.Settings)
	for _, p := range c.Settings {
		if boundAtStart(p) {
			c.Restart = append(c.Restart, p)
		}
	}
	return c
}

// boundAtStart reports whether the setting at path is or lies inside one
// of restartPaths.
func boundAtStart(path string) bool {
	for _, base := range restartPaths {
		if isUnder(path, base) {
			return true
		}
	}
	return false
}

// KeepRestartSettings returns a copy of next in which every setting bound
// at start (see Change.Restart) has its value in running. The copy is the
// configuration in force after a reload from running to next. Neither
// argument is modified, and the copy shares their lists, maps and
// pointers, so none of them may be modified afterwards.
func KeepRestartSettings(running, next *Config) *Config {
	out := *next
	src := reflect.ValueOf(running).Elem()
	dst := reflect.ValueOf(&out).Elem()
	for _, path := range restartPaths {
		settingAt(dst, path).Set(settingAt(src, path))
	}
	return &out
}

// settingAt returns the field of the struct v at the dotted YAML path. It
// panics when path names no field, which the tests of restartPaths catch.
func settingAt(v reflect.Value, path string) reflect.Value {
	for name := range strings.SplitSeq(path, ".") {
		fields, _ := yamlFields(v.Type())
		f, ok := fields[name]
		if !ok {
			panic("config: no setting at " + path)
		}
		v = v.FieldByIndex(f.Index)
	}
	return v
}

func (c *Change) diffNodes(prev, next []Node) {
	byName := make(map[string]Node, len(prev))
	for _, n := range prev {
		byName[n.Name] = n
	}
	inNext := make(map[string]bool, len(next))
	for _, n := range next {
		inNext[n.Name] = true
		old, ok := byName[n.Name]
		switch {
		case !ok:
			c.Added = append(c.Added, n)
		case old != n:
			c.Updated = append(c.Updated, NodeChange{Old: old, New: n})
		}
	}
	for _, n := range prev {
		if !inNext[n.Name] {
			c.Removed = append(c.Removed, n)
		}
	}
}

// diffValues appends to out the path of every setting that differs
// between a and b, which have the same type.
func diffValues(a, b reflect.Value, path string, out *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		fields, names := yamlFields(a.Type())
		for _, name := range names {
			p := joinPath(path, name)
			if p == "nodes" {
				continue // Compared by diffNodes.
			}
			f := fields[name]
			diffValues(a.FieldByIndex(f.Index), b.FieldByIndex(f.Index), p, out)
		}
	case reflect.Map:
		diffMaps(a, b, path, out)
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}

// diffMaps compares two maps with string keys entry by entry.
func diffMaps(a, b reflect.Value, path string, out *[]string) {
	keys := map[string]bool{}
	for _, k := range a.MapKeys() {
		keys[k.String()] = true
	}
	for _, k := range b.MapKeys() {
		keys[k.String()] = true
	}
	for k := range keys {
		av, bv := a.MapIndex(reflect.ValueOf(k)), b.MapIndex(reflect.ValueOf(k))
		if av.IsValid() != bv.IsValid() ||
			av.IsValid() && !reflect.DeepEqual(av.Interface(), bv.Interface()) {
			*out = append(*out, joinPath(path, k))
		}
	}
}

// Empty reports whether nothing changed.
func (c *Change) Empty() bool {
	return len(c.Added) == 0 && len(c.Removed) == 0 && len(c.Updated) == 0 &&
		len(c.Settings) == 0
}

// NeedsRestart reports whether a setting changed that only a restart
// applies.
func (c *Change) NeedsRestart() bool {
	return len(c.Restart) > 0
}

// Changed reports whether any changed setting is path or lies inside it:
// Changed("queue") is true when queue.aging or any class changed. Nodes
// are reported by Added, Removed and Updated, never here.
func (c *Change) Changed(path string) bool {
	for _, p := range c.Settings {
		if isUnder(p, path) || path == "" {
			return true
		}
	}
	return false
}
