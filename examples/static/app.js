fetch('/api/time')
  .then((response) => response.json())
  .then((answer) => {
    document.getElementById('time').textContent =
      new Date(answer.time * 1000).toISOString() + ' (worker ' + answer.worker + ')';
  });
