package proxy

import (
	"fmt"
	"net/url"
	"testing"

	"github.com/llmproxy/llmproxy/balancer"
)

// TestStickyNodeSpreadsClients checks that client addresses are pinned in
// about equal shares to nodes whose names differ only in their last
// character. It also checks that the pick among a subset of the nodes is
// the pick among all of them whenever that node is in the subset.
func TestStickyNodeSpreadsClients(t *testing.T) {
	var nodes []*balancer.Node
	for _, name := range []string{"gpu1", "gpu2", "gpu3"} {
		u, _ := url.Parse("http://" + name + ":11434")
		nodes = append(nodes, balancer.NewNode(name, u, 4, 1))
	}
	got := map[string]int{}
	for i := range 300 {
		client := fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
		pick := stickyNode(client, nodes)
		got[pick.Name]++
		for skip := range nodes {
			subset := append(append([]*balancer.Node{}, nodes[:skip]...), nodes[skip+1:]...)
			if sub := stickyNode(client, subset); nodes[skip] != pick && sub != pick {
				t.Errorf("client %s: %s among all nodes, %s without %s", client, pick.Name, sub.Name, nodes[skip].Name)
			}
		}
	}
	// Binomial spread: a standard deviation of about 8.
	for _, n := range nodes {
		if c := got[n.Name]; c < 70 || c > 130 {
			t.Errorf("%s pinned %d of 300 clients, want about 100; split %v", n.Name, c, got)
		}
	}
}
