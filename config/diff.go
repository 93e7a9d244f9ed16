package config

import (
	"reflect"
	"slices"
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
	// they are bound at start: the listeners and the Redis connection.
	Restart []string
}

// NodeChange is a node whose settings changed between two configs.
type NodeChange struct {
	Old, New Node
}

// restartPaths are the settings bound at start, see Change.Restart.
var restartPaths = []string{"listen", "admin.listen", "max_header_bytes", "redis.addr", "redis.password", "redis.db"}

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
		if slices.Contains(restartPaths, p) {
			c.Restart = append(c.Restart, p)
		}
	}
	return c
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
