"""Dependency graphs: cycle detection with the path named, and a topological order."""


def find_cycle(edges: dict) -> list | None:
    """edges: {node: [nodes it comes after]}. A cycle as a path [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def topological(edges: dict) -> list:
    """Nodes ordered so each comes after everything it depends on (edges must be acyclic)."""
    order, done = [], set()

    def visit(node):
        if node in done:
            return
        done.add(node)
        for dep in edges.get(node, ()):
            visit(dep)
        order.append(node)

    for node in edges:
        visit(node)
    return order
