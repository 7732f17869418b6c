//! The `path` routes of one site as a radix tree (edges labelled with byte strings, children
//! found by their first byte), so finding the longest matching prefix costs one walk down the
//! path's bytes, however many routes there are.
//!
//! Every node that ends a configured prefix holds that prefix's routes (several when their
//! conditions differ) and a link to the nearest ancestor that holds routes too: the prefixes that
//! match a path, longest first, are the deepest node the walk reached and then that chain of
//! links, with no allocation and no backtracking.

/// Index of a node in `PrefixTree::nodes`; the root is 0.
type NodeId = u32;

#[derive(Debug)]
pub struct PrefixTree<V> {
    nodes: Vec<Node<V>>,
}

#[derive(Debug)]
struct Node<V> {
    /// The bytes on the edge from the parent (empty for the root).
    label: Box<[u8]>,
    /// The length of the prefix this node ends.
    len: usize,
    /// Children by the first byte of their label, sorted.
    children: Vec<(u8, NodeId)>,
    /// The routes whose prefix ends here, in config order.
    values: Vec<V>,
    /// The nearest proper ancestor with values.
    up: Option<NodeId>,
}

impl<V> Node<V> {
    fn new(label: &[u8], len: usize) -> Node<V> {
        Node {
            label: label.into(),
            len,
            children: Vec::new(),
            values: Vec::new(),
            up: None,
        }
    }
}

impl<V> Default for PrefixTree<V> {
    fn default() -> Self {
        PrefixTree {
            nodes: vec![Node::new(b"", 0)],
        }
    }
}

impl<V> PrefixTree<V> {
    /// A tree of `(prefix, value)` pairs; values of one prefix keep their order.
    pub fn new(entries: impl IntoIterator<Item = (String, V)>) -> PrefixTree<V> {
        let mut tree = PrefixTree::default();
        for (prefix, value) in entries {
            let node = tree.insert(prefix.as_bytes());
            tree.nodes[node as usize].values.push(value);
        }
        tree.link(0, None);
        tree
    }

    fn child(&self, node: NodeId, byte: u8) -> Option<NodeId> {
        let children = &self.nodes[node as usize].children;
        children
            .binary_search_by_key(&byte, |(b, _)| *b)
            .ok()
            .map(|i| children[i].1)
    }

    /// The node ending `key`, made if need be (splitting the edge it ends inside).
    fn insert(&mut self, key: &[u8]) -> NodeId {
        let mut node: NodeId = 0;
        let mut depth = 0;
        while depth < key.len() {
            let rest = &key[depth..];
            let Some(child) = self.child(node, rest[0]) else {
                return self.add_child(node, rest, key.len());
            };
            let label = &self.nodes[child as usize].label;
            let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common < label.len() {
                let middle = self.split(node, child, common);
                if common == rest.len() {
                    return middle;
                }
                return self.add_child(middle, &rest[common..], key.len());
            }
            node = child;
            depth += common;
        }
        node
    }

    fn add_child(&mut self, parent: NodeId, label: &[u8], len: usize) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node::new(label, len));
        let children = &mut self.nodes[parent as usize].children;
        let at = children.partition_point(|(b, _)| *b < label[0]);
        children.insert(at, (label[0], id));
        id
    }

    /// Puts a node between `parent` and `child` after the first `at` bytes of the child's label.
    fn split(&mut self, parent: NodeId, child: NodeId, at: usize) -> NodeId {
        let label = std::mem::take(&mut self.nodes[child as usize].label);
        let len = self.nodes[child as usize].len - (label.len() - at);
        let middle = self.nodes.len() as NodeId;
        let mut node = Node::new(&label[..at], len);
        node.children.push((label[at], child));
        self.nodes.push(node);
        self.nodes[child as usize].label = label[at..].into();
        let slot = &mut self.nodes[parent as usize].children;
        if let Ok(i) = slot.binary_search_by_key(&label[0], |(b, _)| *b) {
            slot[i].1 = middle;
        }
        middle
    }

    /// Sets every node's `up` link, depth first from `node` (whose nearest ancestor with values
    /// is `up`).
    fn link(&mut self, node: NodeId, up: Option<NodeId>) {
        let mut stack = vec![(node, up)];
        while let Some((node, up)) = stack.pop() {
            let n = &mut self.nodes[node as usize];
            n.up = up;
            let below = if n.values.is_empty() { up } else { Some(node) };
            stack.extend(n.children.iter().map(|(_, child)| (*child, below)));
        }
    }

    /// The prefixes that match `path`, longest first, each with its length and values: `path`
    /// starts with the prefix, or the prefix is `path` and a `/` (a prefix ending in `/` also
    /// takes itself without it).
    pub fn matches<'t>(&'t self, path: &str) -> Matches<'t, V> {
        Matches {
            tree: self,
            next: self.deepest(path.as_bytes()),
        }
    }

    /// The longest prefix with values that matches `path`.
    fn deepest(&self, path: &[u8]) -> Option<NodeId> {
        let mut node: NodeId = 0;
        let mut depth = 0;
        let mut best = None;
        loop {
            // past the end of the path only a `/` may follow: `path = "/api/"` takes `/api`
            let next = path.get(depth).copied().unwrap_or(b'/');
            let Some(child) = self.child(node, next) else {
                break;
            };
            let n = &self.nodes[child as usize];
            // the label's first byte is `next`: the child was found by it
            let (label, left) = (&n.label[..], path.len() - depth);
            if label.len() <= left && same(&label[1..], &path[depth + 1..depth + label.len()]) {
                node = child;
                depth += label.len();
                if !n.values.is_empty() {
                    best = Some(child);
                }
                continue;
            }
            // the label is the rest of the path and a `/`
            let rest = &path[depth..];
            let slash_more = label.len() == left + 1 && label.ends_with(b"/");
            if slash_more && !n.values.is_empty() && same(&label[..left], rest) {
                best = Some(child);
            }
            break;
        }
        best
    }
}

/// Byte by byte: labels are short (a path segment or less), where a `memcmp` call costs more
/// than the comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// See [`PrefixTree::matches`].
pub struct Matches<'t, V> {
    tree: &'t PrefixTree<V>,
    next: Option<NodeId>,
}

impl<'t, V> Iterator for Matches<'t, V> {
    /// The prefix's length and its values.
    type Item = (usize, &'t [V]);

    fn next(&mut self) -> Option<Self::Item> {
        let node = &self.tree.nodes[self.next? as usize];
        self.next = node.up;
        Some((node.len, &node.values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(prefixes: &[&str]) -> PrefixTree<usize> {
        PrefixTree::new(prefixes.iter().enumerate().map(|(i, p)| (p.to_string(), i)))
    }

    fn found(tree: &PrefixTree<usize>, path: &str) -> Vec<(usize, Vec<usize>)> {
        tree.matches(path)
            .map(|(len, v)| (len, v.to_vec()))
            .collect()
    }

    /// What the tree must agree with: every prefix that matches, longest first, config order
    /// within one prefix (the scan the router made before the tree).
    fn linear(prefixes: &[String], path: &str) -> Vec<(usize, Vec<usize>)> {
        let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, p) in prefixes.iter().enumerate() {
            let takes =
                path.starts_with(p.as_str()) || p.len() > 1 && p.strip_suffix('/') == Some(path);
            if !takes {
                continue;
            }
            match out.iter_mut().find(|(len, _)| *len == p.len()) {
                Some((_, ids)) => ids.push(i),
                None => out.push((p.len(), vec![i])),
            }
        }
        out.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        out
    }

    #[test]
    fn longest_first_then_shorter() {
        let t = tree(&["/", "/api/", "/api/v2/", "/api", "/apix/", "/api/"]);
        assert_eq!(
            found(&t, "/api/v2/x"),
            [(8, vec![2]), (5, vec![1, 5]), (4, vec![3]), (1, vec![0])]
        );
        assert_eq!(
            found(&t, "/apix"),
            [(6, vec![4]), (4, vec![3]), (1, vec![0])]
        );
        assert_eq!(
            found(&t, "/api/v2"),
            [(8, vec![2]), (5, vec![1, 5]), (4, vec![3]), (1, vec![0])]
        );
        assert_eq!(found(&t, "/ap"), [(1, vec![0])]);
        assert_eq!(found(&tree(&["/api/"]), "/x"), []);
        assert_eq!(found(&tree(&[]), "/x"), []);
    }

    #[test]
    fn a_prefix_without_its_slash_only_when_the_path_ends_there() {
        let t = tree(&["/a/b/", "/a/bc/"]);
        assert_eq!(found(&t, "/a/b"), [(5, vec![0])]);
        assert_eq!(found(&t, "/a/bc"), [(6, vec![1])]);
        assert_eq!(found(&t, "/a/"), []);
        assert_eq!(found(&t, "/a"), []);
    }

    proptest! {
        /// Random prefix sets over a small alphabet (so that they share and split edges) and
        /// random paths: the tree finds what the linear scan finds, in the same order.
        #[test]
        fn agrees_with_the_linear_scan(
            prefixes in proptest::collection::vec("/[ab/]{0,6}", 0..24),
            paths in proptest::collection::vec("/[ab/]{0,8}", 1..16),
        ) {
            let t = PrefixTree::new(prefixes.iter().cloned().enumerate().map(|(i, p)| (p, i)));
            for path in &paths {
                prop_assert_eq!(found(&t, path), linear(&prefixes, path), "path {}", path);
            }
            for p in &prefixes {
                prop_assert_eq!(found(&t, p), linear(&prefixes, p));
            }
        }
    }
}
