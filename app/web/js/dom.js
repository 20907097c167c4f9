// Small helpers the views share: the problem banner, status lines and table rows.

const problem = () => document.getElementById('problem');

export function showProblem(error) {
  problem().textContent = error.message;
}

export function clearProblem() {
  problem().textContent = '';
}

// Runs an action started by the user; a failure is shown, never thrown at the console alone.
export async function attempt(action) {
  clearProblem();
  try {
    return await action();
  } catch (error) {
    showProblem(error);
    return undefined;
  }
}

export function setText(id, text) {
  document.getElementById(id).textContent = text;
}

export function fillTable(id, rows) {
  const table = document.getElementById(id);
  const body = table.tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const row = document.createElement('tr');
    for (const text of cells) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  table.hidden = rows.length === 0;
  document.getElementById(`${id}-empty`).hidden = rows.length > 0;
}

export function when(timestamp) {
  return new Date(timestamp).toLocaleString(undefined, {
    dateStyle: 'medium', timeStyle: 'short',
  });
}

export function seconds(value) {
  return `${value.toFixed(1)} s`;
}
